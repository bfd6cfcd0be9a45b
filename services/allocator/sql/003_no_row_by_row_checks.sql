-- Foreign keys on units cost a lookup and a row lock per unit on the hot path and guard
-- nothing the allocator can get wrong: it writes units only for orders it inserted and codes
-- it claimed FOR UPDATE in the same transaction. What matters, one code per unit and one
-- unit per code, stays enforced by the primary key and UNIQUE (code_id).
ALTER TABLE units DROP CONSTRAINT units_order_key_fkey;
ALTER TABLE units DROP CONSTRAINT units_code_id_fkey;
