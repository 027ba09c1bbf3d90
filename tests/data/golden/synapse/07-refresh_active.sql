-- tdsp-deploy: refresh_active
DECLARE @endpoint nvarchar(128) = ?;
DECLARE @total int;
SET @total = (SELECT ISNULL(SUM([weight]), 0) FROM [dbo].[tdsp_traffic] WHERE [endpoint] = @endpoint);
IF @total NOT IN (0, 100)
    THROW 50005, N'tdsp-50005: the traffic weights of this endpoint''s slots must add up to 100 (or 0)', 1;
UPDATE [dbo].[tdsp_models] SET [active] = 0 WHERE [endpoint] = @endpoint;
UPDATE [dbo].[tdsp_models] SET [active] = 1
WHERE [endpoint] = @endpoint
    AND [version] IN (SELECT [version] FROM [dbo].[tdsp_traffic] WHERE [endpoint] = @endpoint AND [weight] > 0);
