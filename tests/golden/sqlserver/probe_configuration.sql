SELECT [value_in_use] FROM sys.configurations WHERE [name] = N'external scripts enabled';
