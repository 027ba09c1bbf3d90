IF OBJECT_ID(N'[dbo].[tdsp_traffic]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_traffic] (
    [endpoint] nvarchar(128) NOT NULL,
    [slot] nvarchar(64) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [weight] int NOT NULL,
    [salt] nvarchar(64) NULL,
    [updated_at] datetime2 NOT NULL
)
WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);
