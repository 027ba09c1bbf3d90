IF OBJECT_ID(N'[dbo].[tdsp_requests]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_requests] (
    [endpoint] nvarchar(128) NOT NULL,
    [t] datetime2 NOT NULL,
    [request_id] nvarchar(64) NOT NULL,
    [slot] nvarchar(64) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [status] int NOT NULL,
    [row_count] int NOT NULL,
    [latency_ms] float NULL,
    [row_keys] nvarchar(max) NULL,
    [pinned] bit NOT NULL,
    [message] nvarchar(2000) NULL
)
WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);
