-- GetStatus pages and the result CSV read a request's images in input order, a page at a
-- time from a (product position, index) on.
CREATE INDEX images_in_input_order ON images (request_id, product_position, idx);
