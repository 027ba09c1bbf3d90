-- tdsp-deploy: assign_slot
DECLARE @endpoint nvarchar(128) = ?, @slot nvarchar(64) = ?, @version nvarchar(64) = ?;
IF NOT EXISTS (SELECT 1 FROM [dbo].[tdsp_models] WHERE [endpoint] = @endpoint AND [version] = @version)
    THROW 50002, N'tdsp-50002: this model version is not in the model table; insert it first', 1;
IF EXISTS (SELECT 1 FROM [dbo].[tdsp_traffic] WHERE [endpoint] = @endpoint AND [slot] = @slot)
    UPDATE [dbo].[tdsp_traffic]
    SET [version] = @version, [updated_at] = SYSUTCDATETIME()
    WHERE [endpoint] = @endpoint AND [slot] = @slot;
ELSE
    INSERT INTO [dbo].[tdsp_traffic] ([endpoint], [slot], [version], [weight], [salt], [updated_at])
    SELECT @endpoint, @slot, @version, 0, MAX([salt]), SYSUTCDATETIME()
    FROM [dbo].[tdsp_traffic] WHERE [endpoint] = @endpoint;
