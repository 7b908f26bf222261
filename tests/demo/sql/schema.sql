-- Demo shop schema (MariaDB 10.11 / MySQL 8). Applied by inventory, payment and user at start-up,
-- under GET_LOCK('loupe_demo_schema'), so several services may start at once. Every statement is idempotent.
-- Statements end with ';' at the end of a line; no ';' inside literals (db.rs splits on that).

CREATE TABLE IF NOT EXISTS products (
  id INT NOT NULL PRIMARY KEY,
  sku VARCHAR(32) NOT NULL UNIQUE,
  name VARCHAR(128) NOT NULL,
  description VARCHAR(255) NOT NULL,
  price_cents INT NOT NULL,
  stock INT NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS users (
  id INT NOT NULL PRIMARY KEY,
  email VARCHAR(128) NOT NULL UNIQUE,
  name VARCHAR(128) NOT NULL,
  tier VARCHAR(16) NOT NULL,
  city VARCHAR(64) NOT NULL
) ENGINE=InnoDB;

-- idx_reviews_product covers the rating query of a product page (about 2 ms for 10,000 reviews). The slow-sql
-- exercise (mode=scan) makes inventory read it with IGNORE INDEX (idx_reviews_product), which is what a forgotten
-- index looks like: a full scan of the table per product page (about 30 ms for 200,000 rows, growing with it).
CREATE TABLE IF NOT EXISTS reviews (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  product_id INT NOT NULL,
  rating TINYINT NOT NULL,
  body VARCHAR(200) NOT NULL,
  INDEX idx_reviews_product (product_id, rating)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS payments (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  order_id VARCHAR(40) NOT NULL,
  user_id INT NOT NULL,
  amount_cents BIGINT NOT NULL,
  status VARCHAR(16) NOT NULL,
  created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  INDEX idx_payments_user (user_id),
  INDEX idx_payments_order (order_id)
) ENGINE=InnoDB;
