-- Note: T-SQL PREDICT is off by default and currently unavailable in Synapse dedicated SQL pools
-- (Microsoft's documentation owners, 2024: MicrosoftDocs/sql-docs pull request 9795); mode: sql
-- works only on a pool where it is enabled. target.mode: spark scores in every workspace.
-- Score the rows of a table or view (columns: sepal_length, sepal_width, petal_length, petal_width):
EXEC [dbo].[score_iris] @input_table = N'dbo.my_table';
-- The same rows, every one scored by one slot (its model version), whatever the split:
EXEC [dbo].[score_iris] @input_table = N'dbo.my_table', @slot = N'blue';
