ALTER PROCEDURE [dbo].[score_iris] @input_table nvarchar(256)
AS
BEGIN
    SET NOCOUNT ON;
    IF NOT EXISTS (SELECT 1 FROM [dbo].[tdsp_models] WHERE [endpoint] = N'score_iris' AND [active] = 1)
        THROW 50003, N'no active model version for this procedure; push the model first', 1;
    IF PARSENAME(@input_table, 1) IS NULL OR PARSENAME(@input_table, 3) IS NOT NULL
        THROW 50004, N'@input_table must name a table or view: [schema.]name or #temp', 1;
    DECLARE @source nvarchar(300) = CASE WHEN PARSENAME(@input_table, 2) IS NULL
        THEN QUOTENAME(PARSENAME(@input_table, 1))
        ELSE QUOTENAME(PARSENAME(@input_table, 2)) + N'.' + QUOTENAME(PARSENAME(@input_table, 1)) END;
    DECLARE @query nvarchar(max) = N'SELECT d.*, p.*, m.[version] AS [model_version]
FROM PREDICT(MODEL = (SELECT [payload] FROM [dbo].[tdsp_models] WHERE [endpoint] = N''score_iris'' AND [active] = 1),
             DATA = ' + @source + N' AS d, RUNTIME = ONNX)
WITH ([species] nvarchar(16), [p_setosa] float, [p_versicolor] float, [p_virginica] float) AS p
CROSS JOIN (SELECT [version] FROM [dbo].[tdsp_models] WHERE [endpoint] = N''score_iris'' AND [active] = 1) AS m;';
    EXEC sp_executesql @query;
END;
