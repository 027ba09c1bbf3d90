-- tdsp-deploy: probe_permission
SELECT HAS_PERMS_BY_NAME(NULL, N'DATABASE', N'EXECUTE ANY EXTERNAL SCRIPT') AS [allowed];
