IF OBJECT_ID(N'[dbo].[score_iris]', N'P') IS NULL
    EXEC (N'CREATE PROCEDURE [dbo].[score_iris] AS SELECT 1 AS [stub];');
