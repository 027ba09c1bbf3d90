SET NOCOUNT ON;
IF OBJECT_ID(N'tempdb..#tdsp_input') IS NOT NULL DROP TABLE #tdsp_input;
CREATE TABLE #tdsp_input ([tdsp_row] int, [sepal_length] float, [sepal_width] float, [petal_length] float, [petal_width] float) WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);
INSERT INTO #tdsp_input ([tdsp_row], [sepal_length], [sepal_width], [petal_length], [petal_width])
SELECT 0, CAST(? AS float), CAST(? AS float), CAST(? AS float), CAST(? AS float)
UNION ALL SELECT 1, CAST(? AS float), CAST(? AS float), CAST(? AS float), CAST(? AS float);
EXEC [dbo].[score_iris] @input_table = N'#tdsp_input', @slot = ?, @request_id = ?;
DROP TABLE #tdsp_input;
