-- Output and result-CSV columns hold object keys from here on, never URLs: a presigned URL
-- written once would be dead after 7 days. URLs are made (signed) when read.
-- Keys are deterministic (DESIGN.md): {request_id}/{serial}-{index}.jpg and, for result
-- CSVs stored before this version, {request_id}/result.csv.
UPDATE images SET output_url = request_id || '/' || serial_number || '-' || idx || '.jpg'
WHERE output_url <> '';
UPDATE events SET output_url = request_id || '/' || serial_number || '-' || idx || '.jpg'
WHERE output_url <> '' AND serial_number IS NOT NULL;
UPDATE requests SET result_csv_url = id || '/result.csv' WHERE result_csv_url <> '';
UPDATE events SET result_csv_url = request_id || '/result.csv' WHERE result_csv_url <> '';
COMMENT ON COLUMN images.output_url IS 'the object key of the output (not a URL)';
COMMENT ON COLUMN events.output_url IS 'the object key of the output (not a URL)';
COMMENT ON COLUMN requests.result_csv_url IS 'the object key of the result CSV (not a URL)';
COMMENT ON COLUMN events.result_csv_url IS 'the object key of the result CSV (not a URL)';
