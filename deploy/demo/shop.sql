-- The demo's sample source database: a small shop, about 30 MB, built from
-- generate_series so the demo needs no download. Deterministic (setseed).
SELECT setseed(0.42);

CREATE TABLE customers (
  id         bigint PRIMARY KEY,
  email      text NOT NULL UNIQUE,
  name       text NOT NULL,
  country    text NOT NULL,
  created_at timestamptz NOT NULL
);

CREATE TABLE products (
  id          bigint PRIMARY KEY,
  sku         text NOT NULL UNIQUE,
  title       text NOT NULL,
  price_cents integer NOT NULL CHECK (price_cents > 0)
);

CREATE TABLE orders (
  id          bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers,
  status      text NOT NULL,
  created_at  timestamptz NOT NULL
);

CREATE TABLE order_items (
  order_id   bigint NOT NULL REFERENCES orders,
  product_id bigint NOT NULL REFERENCES products,
  quantity   integer NOT NULL CHECK (quantity > 0),
  PRIMARY KEY (order_id, product_id)
);

INSERT INTO customers
SELECT i, 'customer' || i || '@example.com', 'Customer ' || i,
       (ARRAY['DE','FR','US','JP','BR','IN'])[1 + (i % 6)],
       now() - (i % 1000) * interval '1 day'
FROM generate_series(1, 20000) AS i;

INSERT INTO products
SELECT i, 'SKU-' || lpad(i::text, 6, '0'), 'Product ' || i, 100 + (random() * 9900)::int
FROM generate_series(1, 2000) AS i;

INSERT INTO orders
SELECT i, 1 + (random() * 19999)::bigint,
       (ARRAY['new','paid','shipped','delivered','cancelled'])[1 + (i % 5)],
       now() - (random() * 1000) * interval '1 day'
FROM generate_series(1, 100000) AS i;

INSERT INTO order_items
SELECT o, 1 + ((o * 7 + k * 13) % 2000), 1 + (o + k) % 4
FROM generate_series(1, 100000) AS o, generate_series(1, 3) AS k;

CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_created_idx ON orders (created_at);
ANALYZE customers, products, orders, order_items;
