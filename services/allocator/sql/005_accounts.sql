-- Tenancy: every code, sku total, format rule, order and unit belongs to a merchant account
-- (by default the store id), and a claim never looks outside the order's account.
--
-- Codes stored before accounts existed go to the one store that ever ordered their sku, when
-- exactly one did: that store is the only party that can have imported them. Every other sku
-- (several stores ordered it, or none yet) goes to the account ':legacy' (with a colon, so
-- never a store id), which no store's orders draw from: stock whose owner cannot be proven is
-- held back rather than handed to whichever store orders first. `tasleem stock move` hands it
-- to its owner.
CREATE TEMPORARY TABLE sku_owner ON COMMIT DROP AS
    SELECT u.sku, min(o.store_id) AS account
    FROM units u JOIN orders o USING (order_key)
    GROUP BY u.sku HAVING count(DISTINCT o.store_id) = 1;

-- a default while existing rows are filled in; then dropped, so new rows must name one
ALTER TABLE orders ADD COLUMN account text NOT NULL DEFAULT '';
UPDATE orders SET account = store_id;
ALTER TABLE orders ALTER COLUMN account DROP DEFAULT;

ALTER TABLE units ADD COLUMN account text NOT NULL DEFAULT '';
UPDATE units SET account = o.account FROM orders o WHERE o.order_key = units.order_key;
ALTER TABLE units ALTER COLUMN account DROP DEFAULT;
DROP INDEX units_waiting;
CREATE INDEX units_waiting ON units (account, sku, seq) WHERE code_id IS NULL;

ALTER TABLE codes ADD COLUMN account text NOT NULL DEFAULT ':legacy';
UPDATE codes SET account = s.account FROM sku_owner s WHERE s.sku = codes.sku;
ALTER TABLE codes ALTER COLUMN account DROP DEFAULT;
-- the claim's index, led by the account: a claim reads only its own account's codes
DROP INDEX codes_claimable;
CREATE INDEX codes_claimable ON codes (account, sku, expires_at ASC NULLS LAST, code_id)
    WHERE status = 'available';

ALTER TABLE sku_totals ADD COLUMN account text NOT NULL DEFAULT ':legacy';
UPDATE sku_totals SET account = s.account FROM sku_owner s WHERE s.sku = sku_totals.sku;
ALTER TABLE sku_totals ALTER COLUMN account DROP DEFAULT;
ALTER TABLE sku_totals DROP CONSTRAINT sku_totals_pkey, ADD PRIMARY KEY (account, sku);

ALTER TABLE sku_rules ADD COLUMN account text NOT NULL DEFAULT ':legacy';
UPDATE sku_rules SET account = s.account FROM sku_owner s WHERE s.sku = sku_rules.sku;
ALTER TABLE sku_rules ALTER COLUMN account DROP DEFAULT;
ALTER TABLE sku_rules DROP CONSTRAINT sku_rules_pkey, ADD PRIMARY KEY (account, sku);

-- A cancellation only stops an order of its own account (NULL: recorded before accounts).
ALTER TABLE cancellations ADD COLUMN account text;
