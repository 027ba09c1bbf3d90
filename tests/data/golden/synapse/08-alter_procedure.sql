ALTER PROCEDURE [dbo].[score_iris] @input_table nvarchar(256), @slot nvarchar(64) = NULL,
    @request_id nvarchar(64) = NULL
AS
BEGIN
    SET NOCOUNT ON;
    IF @request_id IS NULL
        SET @request_id = CONVERT(nvarchar(64), NEWID());
    IF PARSENAME(@input_table, 1) IS NULL OR PARSENAME(@input_table, 3) IS NOT NULL
        THROW 50006, N'tdsp-50006: @input_table must name a table or view: [schema.]name or #temp', 1;
    IF OBJECT_ID(N'tempdb..#tdsp_routes') IS NOT NULL
        DROP TABLE #tdsp_routes;
    -- Who answers: the slot @slot pins, with every bucket; else each slot with a weight, with
    -- the buckets [low, high) of its share, the slots in name order.
    CREATE TABLE #tdsp_routes WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS
    SELECT [slot], [version], ISNULL([salt], N'') AS [salt], ROW_NUMBER() OVER (ORDER BY [slot]) AS [n],
        CASE WHEN @slot IS NULL THEN SUM([weight]) OVER (ORDER BY [slot] ROWS UNBOUNDED PRECEDING) - [weight] ELSE 0 END AS [low],
        CASE WHEN @slot IS NULL THEN SUM([weight]) OVER (ORDER BY [slot] ROWS UNBOUNDED PRECEDING) ELSE 100 END AS [high]
    FROM [dbo].[tdsp_traffic]
    WHERE [endpoint] = N'score_iris' AND ([slot] = @slot OR (@slot IS NULL AND [weight] > 0));
    DECLARE @count int;
    SET @count = (SELECT COUNT(*) FROM #tdsp_routes);
    IF @count = 0
        THROW 50003, N'tdsp-50003: no slot of this endpoint takes traffic (or @slot names none); push the model first', 1;
    DECLARE @source nvarchar(300) = CASE WHEN PARSENAME(@input_table, 2) IS NULL
        THEN QUOTENAME(PARSENAME(@input_table, 1))
        ELSE QUOTENAME(PARSENAME(@input_table, 2)) + N'.' + QUOTENAME(PARSENAME(@input_table, 1)) END;
    DECLARE @rows nvarchar(max) = N'', @scored nvarchar(max) = N'', @n int = 1, @k nvarchar(10);
    WHILE @n <= @count
    BEGIN
        SET @k = CAST(@n AS nvarchar(10));
        SET @rows = @rows + CASE WHEN @n = 1 THEN N'WITH ' ELSE N',' + NCHAR(10) END
            + N'[tdsp_rows_' + @k + N'] AS (SELECT s.* FROM ' + @source + N' AS s CROSS JOIN #tdsp_routes AS r
    WHERE r.[n] = ' + @k + N' AND CAST(SUBSTRING(HASHBYTES(''SHA2_256'', r.[salt] + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_length] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_width] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[petal_length] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[petal_width] AS float), 2), N'''')), 1, 4) AS bigint) * 100 / CAST(4294967296 AS bigint) BETWEEN r.[low] AND r.[high] - 1)';
        SET @scored = @scored + CASE WHEN @n = 1 THEN N'' ELSE NCHAR(10) + N'UNION ALL' + NCHAR(10) END
            + N'SELECT d.*, p.*, r.[version] AS [model_version], r.[slot] AS [variant]
FROM PREDICT(MODEL = (SELECT m.[payload] FROM [dbo].[tdsp_models] AS m JOIN #tdsp_routes AS r ON m.[version] = r.[version]
    WHERE m.[endpoint] = N''score_iris'' AND r.[n] = ' + @k + N'),
             DATA = [tdsp_rows_' + @k + N'] AS d, RUNTIME = ONNX)
WITH ([species] nvarchar(16), [p_setosa] float, [p_versicolor] float, [p_virginica] float) AS p
CROSS JOIN #tdsp_routes AS r
WHERE r.[n] = ' + @k;
        SET @n = @n + 1;
    END;
    DECLARE @query nvarchar(max) = @rows + NCHAR(10) + @scored + NCHAR(10)
        + N'OPTION (LABEL = N''tdsp_score_iris'');';
    DECLARE @started datetime2 = GETUTCDATE(), @status int = 200, @error nvarchar(2048);
    BEGIN TRY
        EXEC sp_executesql @query;
    END TRY
    BEGIN CATCH
        SET @status = 500;  -- one variable per SET: the pool assigns no two in one SELECT
        SET @error = ERROR_MESSAGE();
    END CATCH;
    -- A row per slot that answered into the request log (status 500 when the query failed),
    -- then the failure, with the pool's message, to the caller.
    DECLARE @log nvarchar(max) = N'INSERT INTO [dbo].[tdsp_requests] ([endpoint], [t], [request_id], [slot], [version], [status], [row_count], [latency_ms], [row_keys], [pinned], [message])
SELECT N''score_iris'', GETUTCDATE(), @request_id, r.[slot], r.[version], @status, COUNT(*),
    @elapsed_ms * 1.0 / SUM(COUNT(*)) OVER (), CAST(NULL AS nvarchar(max)), @pinned, LEFT(@error, 2000)
FROM ' + @source + N' AS s JOIN #tdsp_routes AS r ON CAST(SUBSTRING(HASHBYTES(''SHA2_256'', r.[salt] + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_length] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_width] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[petal_length] AS float), 2), N'''') + N''|'' + ISNULL(CONVERT(nvarchar(30), CAST(s.[petal_width] AS float), 2), N'''')), 1, 4) AS bigint) * 100 / CAST(4294967296 AS bigint) BETWEEN r.[low] AND r.[high] - 1
GROUP BY r.[slot], r.[version];';
    DECLARE @elapsed_ms float, @pinned bit = CASE WHEN @slot IS NULL THEN 0 ELSE 1 END;
    SET @elapsed_ms = DATEDIFF(millisecond, @started, GETUTCDATE());
    EXEC sp_executesql @log,
        N'@request_id nvarchar(64), @status int, @elapsed_ms float, @pinned bit, @error nvarchar(2048)',
        @request_id = @request_id, @status = @status, @elapsed_ms = @elapsed_ms, @pinned = @pinned,
        @error = @error;
    DROP TABLE #tdsp_routes;
    IF @status = 500
    BEGIN
        SET @error = LEFT(N'tdsp-50007: ' + @error, 2048);
        THROW 50007, @error, 1;
    END;
END;
