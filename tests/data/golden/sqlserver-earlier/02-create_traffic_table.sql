-- tdsp-deploy: create_traffic_table
IF OBJECT_ID(N'[dbo].[tdsp_traffic]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_traffic] (
    [name] nvarchar(128) NOT NULL,
    [slot] nvarchar(64) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [weight] int NOT NULL DEFAULT 0 CHECK ([weight] BETWEEN 0 AND 100),
    [salt] nvarchar(64) NULL,
    [updated_at] datetime2 NOT NULL DEFAULT SYSUTCDATETIME(),
    PRIMARY KEY ([name], [slot])
);
