-- tdsp-deploy: create_model_table
IF OBJECT_ID(N'[dbo].[tdsp_models]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_models] (
    [name] nvarchar(128) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [sha256] char(64) NOT NULL,
    [flavor] nvarchar(16) NOT NULL,
    [payload] varbinary(max) NOT NULL,
    [created_at] datetime2 NOT NULL DEFAULT SYSUTCDATETIME(),
    [created_by] nvarchar(128) NOT NULL DEFAULT SUSER_SNAME(),
    [manifest] nvarchar(max) NULL,
    [active] bit NOT NULL DEFAULT 0,
    PRIMARY KEY ([name], [version])
);
