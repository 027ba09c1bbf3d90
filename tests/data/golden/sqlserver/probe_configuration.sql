-- tdsp-deploy: probe_configuration
SELECT [value_in_use] FROM sys.configurations WHERE [name] = N'external scripts enabled';
