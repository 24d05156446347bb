-- When a dispatcher last claimed images of the request: claims go to the least recently
-- served request first, so small requests are not starved by large ones.
ALTER TABLE requests ADD COLUMN last_claimed_at timestamptz;
