DECLARE @endpoint nvarchar(128) = ?, @version nvarchar(64) = ?;
IF NOT EXISTS (SELECT 1 FROM [dbo].[tdsp_models] WHERE [endpoint] = @endpoint AND [version] = @version)
    THROW 50002, N'this model version is not in the model table; insert it first', 1;
UPDATE [dbo].[tdsp_models]
SET [active] = CASE WHEN [version] = @version THEN 1 ELSE 0 END
WHERE [endpoint] = @endpoint;
