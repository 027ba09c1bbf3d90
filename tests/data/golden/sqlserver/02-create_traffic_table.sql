-- tdsp-deploy: create_traffic_table
IF OBJECT_ID(N'[dbo].[tdsp_traffic]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_traffic] (
    [endpoint] nvarchar(128) NOT NULL,
    [slot] nvarchar(64) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [weight] int NOT NULL,
    [salt] nvarchar(64) NULL,
    [updated_at] datetime2 NOT NULL,
    CHECK ([weight] BETWEEN 0 AND 100),
    PRIMARY KEY ([endpoint], [slot])
);
