-- tdsp-deploy: create_model_table
IF OBJECT_ID(N'[dbo].[tdsp_models]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_models] (
    [endpoint] nvarchar(128) NOT NULL,
    [name] nvarchar(128) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [sha256] char(64) NOT NULL,
    [flavor] nvarchar(16) NOT NULL,
    [payload] varbinary(max) NOT NULL,
    [created_at] datetime2 NOT NULL,
    [created_by] nvarchar(128) NOT NULL,
    [manifest] nvarchar(max) NULL,
    [active] bit NOT NULL,
    PRIMARY KEY ([endpoint], [version])
);
