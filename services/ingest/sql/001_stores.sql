-- The store registry: who may send orders, and how to check it is really them.
CREATE TABLE stores (
    store_id    text PRIMARY KEY,
    platform    text NOT NULL CHECK (platform IN ('standard', 'salla', 'zid', 'shopify', 'woocommerce')),
    name        text NOT NULL,
    -- two secrets at once, so a platform secret can be rotated without rejecting orders
    secrets     text[] NOT NULL CHECK (cardinality(secrets) BETWEEN 1 AND 2),
    -- platform product/sku -> internal sku; a sku not in the map passes through unchanged
    sku_map     jsonb NOT NULL DEFAULT '{}'::jsonb,
    locale      text NOT NULL DEFAULT 'ar' CHECK (locale IN ('ar', 'en')),
    channels    text[] NOT NULL DEFAULT ARRAY['whatsapp', 'sms', 'email'],
    updated_at  timestamptz NOT NULL DEFAULT now()
);
