-- tdsp-deploy: create_request_log_table
IF OBJECT_ID(N'[dbo].[tdsp_requests]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_requests] (
    [id] bigint IDENTITY(1, 1) PRIMARY KEY,
    [name] nvarchar(128) NOT NULL,
    [t] datetime2 NOT NULL DEFAULT SYSUTCDATETIME(),
    [request_id] nvarchar(64) NOT NULL,
    [slot] nvarchar(64) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [status] int NOT NULL,
    [row_count] int NOT NULL,
    [latency_ms] float NULL,
    [row_keys] nvarchar(max) NULL,
    [pinned] bit NOT NULL,
    [message] nvarchar(2000) NULL
);
