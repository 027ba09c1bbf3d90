-- tdsp-deploy: bind_model_name
DECLARE @model_name sql_variant = CAST(? AS nvarchar(128));
IF EXISTS (SELECT 1 FROM sys.extended_properties WHERE [class] = 1 AND [major_id] = OBJECT_ID(N'[dbo].[score_iris]') AND [minor_id] = 0 AND [name] = N'tdsp_model_name')
    EXEC sys.sp_updateextendedproperty @name = N'tdsp_model_name', @value = @model_name, @level0type = N'SCHEMA', @level0name = N'dbo', @level1type = N'PROCEDURE', @level1name = N'score_iris';
ELSE
    EXEC sys.sp_addextendedproperty @name = N'tdsp_model_name', @value = @model_name, @level0type = N'SCHEMA', @level0name = N'dbo', @level1type = N'PROCEDURE', @level1name = N'score_iris';
IF EXISTS (SELECT 1 FROM sys.extended_properties WHERE [class] = 1 AND [major_id] = OBJECT_ID(N'[dbo].[score_iris_row]') AND [minor_id] = 0 AND [name] = N'tdsp_model_name')
    EXEC sys.sp_updateextendedproperty @name = N'tdsp_model_name', @value = @model_name, @level0type = N'SCHEMA', @level0name = N'dbo', @level1type = N'PROCEDURE', @level1name = N'score_iris_row';
ELSE
    EXEC sys.sp_addextendedproperty @name = N'tdsp_model_name', @value = @model_name, @level0type = N'SCHEMA', @level0name = N'dbo', @level1type = N'PROCEDURE', @level1name = N'score_iris_row';
