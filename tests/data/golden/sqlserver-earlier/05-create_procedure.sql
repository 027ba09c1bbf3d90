CREATE OR ALTER PROCEDURE [dbo].[score_iris]
    @input_query nvarchar(max),
    @slot nvarchar(64) = NULL,
    @request_id nvarchar(64) = NULL
AS
BEGIN
    SET NOCOUNT ON;
    DECLARE @model_name nvarchar(128), @routes nvarchar(max), @bundle varbinary(max) = 0x,
        @request_log nvarchar(max), @script_error nvarchar(max), @n int = 1, @count int;
    DECLARE @route TABLE ([n] int IDENTITY(1, 1) PRIMARY KEY, [slot] nvarchar(64) NOT NULL,
        [version] nvarchar(64) NOT NULL, [weight] int NOT NULL, [salt] nvarchar(64) NULL);
    -- The model this procedure serves: its extended property tdsp_model_name.
    SELECT @model_name = CAST([value] AS nvarchar(128))
    FROM sys.extended_properties
    WHERE [class] = 1 AND [major_id] = @@PROCID AND [minor_id] = 0 AND [name] = N'tdsp_model_name';
    -- Who answers: the slot that @slot pins, else every slot with a traffic weight.
    INSERT INTO @route ([slot], [version], [weight], [salt])
    SELECT [slot], [version], [weight], [salt]
    FROM [dbo].[tdsp_traffic]
    WHERE [name] = @model_name AND ([slot] = @slot OR (@slot IS NULL AND [weight] > 0))
    ORDER BY [slot];
    SET @count = @@ROWCOUNT;
    IF @count = 0
        THROW 50003, N'tdsp-50003: no slot of this endpoint takes traffic (or @slot names none); push the model first', 1;
    -- Their models, in route order, as one bundle: each payload after its 8-byte length.
    WHILE @n <= @count
    BEGIN
        SELECT @bundle = @bundle + CAST(DATALENGTH(m.[payload]) AS binary(8)) + m.[payload]
        FROM @route AS r
        JOIN [dbo].[tdsp_models] AS m ON m.[name] = @model_name AND m.[version] = r.[version]
        WHERE r.[n] = @n;
        SET @n = @n + 1;
    END;
    SET @routes = (SELECT [slot], [version], [weight], [salt] FROM @route ORDER BY [n] FOR JSON PATH);
    IF @request_id IS NULL
        SET @request_id = CONVERT(nvarchar(64), NEWID());
    EXEC sp_execute_external_script
        @language = N'Python',
        @script = N'<the generated script>',
        @input_data_1 = @input_query,
        @params = N'@model_bundle varbinary(max), @routes nvarchar(max), @request_log nvarchar(max) OUTPUT, @script_error nvarchar(max) OUTPUT',
        @model_bundle = @bundle,
        @routes = @routes,
        @request_log = @request_log OUTPUT,
        @script_error = @script_error OUTPUT
    WITH RESULT SETS (([label] nvarchar(16), [p_setosa] float, [p_versicolor] float, [p_virginica] float, [model_version] nvarchar(64)));
    IF @script_error IS NOT NULL
    BEGIN
        DECLARE @thrown nvarchar(2048) = N'tdsp-50010: the model failed:' + NCHAR(10) + RIGHT(@script_error, 2000);
        THROW 50010, @thrown, 1;
    END;
    -- One row per slot that answered, for `tdsp-deploy ab analyze` and `tdsp-deploy logs`.
    INSERT INTO [dbo].[tdsp_requests]
        ([name], [request_id], [slot], [version], [status], [row_count], [latency_ms], [row_keys], [pinned], [message])
    SELECT @model_name, @request_id, [slot], [version], [status], [row_count], [latency_ms], [row_keys],
        CASE WHEN @slot IS NULL THEN 0 ELSE 1 END, [message]
    FROM OPENJSON(@request_log)
    WITH ([slot] nvarchar(64), [version] nvarchar(64), [status] int, [row_count] int, [latency_ms] float,
        [row_keys] nvarchar(max) AS JSON, [message] nvarchar(2000));
END;
