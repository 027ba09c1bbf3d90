IF OBJECT_ID(N'[dbo].[tdsp_requests]', N'U') IS NULL
CREATE TABLE [dbo].[tdsp_requests] (
    [endpoint] nvarchar(128) NOT NULL,
    [t] datetime2 NOT NULL,
    [request_id] nvarchar(64) NOT NULL,
    [slot] nvarchar(64) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [status] int NOT NULL,
    [row_key] nvarchar(4000) NULL,
    [latency_ms] float NULL,
    [pinned] bit NOT NULL
)
WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);
