-- Score the rows of a table or view (columns: sepal_length, sepal_width, petal_length, petal_width):
EXEC [dbo].[score_iris] @input_table = N'dbo.my_table';
-- The same rows, every one scored by one slot (its model version), whatever the split:
EXEC [dbo].[score_iris] @input_table = N'dbo.my_table', @slot = N'blue';
