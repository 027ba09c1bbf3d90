-- tdsp-deploy: refresh_active
DECLARE @name nvarchar(128) = ?;
DECLARE @total int = (SELECT ISNULL(SUM([weight]), 0) FROM [dbo].[tdsp_traffic] WHERE [name] = @name);
IF @total NOT IN (0, 100)
    THROW 50005, N'tdsp-50005: the traffic weights of this model''s slots must add up to 100 (or 0)', 1;
UPDATE m
SET m.[active] = CASE WHEN EXISTS (
        SELECT 1 FROM [dbo].[tdsp_traffic] AS t WHERE t.[name] = @name AND t.[version] = m.[version] AND t.[weight] > 0
    ) THEN 1 ELSE 0 END
FROM [dbo].[tdsp_models] AS m
WHERE m.[name] = @name;
