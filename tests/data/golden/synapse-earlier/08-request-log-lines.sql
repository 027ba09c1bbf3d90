    -- Every scored row into the request log (status 500 when the query failed), then the
    -- failure, with the pool's message, to the caller.
    DECLARE @log nvarchar(max) = N'INSERT INTO [dbo].[tdsp_requests] ([endpoint], [t], [request_id], [slot], [version], [status], [row_key], [latency_ms], [pinned])
SELECT N''score_iris'', GETUTCDATE(), @request_id, r.[slot], r.[version], @status, CAST(NULL AS nvarchar(4000)) AS [row_key],
    @elapsed_ms * 1.0 / COUNT(*) OVER (), @pinned
FROM ' + @source + N' AS s JOIN #tdsp_routes AS r ON CAST(SUBSTRING(HASHBYTES(''SHA2_256'', r.[salt] + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_length] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_width] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[petal_length] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[petal_width] AS float), 2), N'''')), 1, 4) AS bigint) * 100 / CAST(4294967296 AS bigint) BETWEEN r.[low] AND r.[high] - 1;';
    DECLARE @elapsed_ms float, @pinned bit = CASE WHEN @slot IS NULL THEN 0 ELSE 1 END;
    SET @elapsed_ms = DATEDIFF(millisecond, @started, GETUTCDATE());
    EXEC sp_executesql @log, N'@request_id nvarchar(64), @status int, @elapsed_ms float, @pinned bit',
        @request_id = @request_id, @status = @status, @elapsed_ms = @elapsed_ms, @pinned = @pinned;
