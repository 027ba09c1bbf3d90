DECLARE @endpoint nvarchar(128) = ?, @name nvarchar(128) = ?, @version nvarchar(64) = ?,
    @sha256 char(64) = ?, @flavor nvarchar(16) = ?, @payload varbinary(max) = ?, @manifest nvarchar(max) = ?;
IF EXISTS (SELECT 1 FROM [dbo].[tdsp_models]
    WHERE [endpoint] = @endpoint AND [version] = @version AND [sha256] <> @sha256)
    THROW 50001, N'tdsp-50001: this model version is already stored with other content; give the model a new version', 1;
IF NOT EXISTS (SELECT 1 FROM [dbo].[tdsp_models] WHERE [endpoint] = @endpoint AND [version] = @version)
    INSERT INTO [dbo].[tdsp_models] ([endpoint], [name], [version], [sha256], [flavor], [payload],
        [created_at], [created_by], [manifest], [active])
    SELECT @endpoint, @name, @version, @sha256, @flavor, @payload, GETUTCDATE(), SUSER_SNAME(), @manifest, 0;
