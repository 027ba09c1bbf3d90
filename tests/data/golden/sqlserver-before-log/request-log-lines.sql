    INSERT INTO [dbo].[tdsp_requests]
        ([endpoint], [request_id], [slot], [version], [status], [row_count], [latency_ms], [row_keys], [pinned], [message])
    SELECT @endpoint, @request_id, [slot], [version], [status], [row_count], [latency_ms], [row_keys],
        CASE WHEN @slot IS NULL THEN 0 ELSE 1 END, [message]
