"""A/B testing between deployment slots: analysis and reports."""
