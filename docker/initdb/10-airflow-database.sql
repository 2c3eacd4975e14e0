-- Runs once, when a site's PostgreSQL volume is first initialised (postgres image, as POSTGRES_USER):
-- the site's Airflow metadata gets its own database beside the feature store ("features").
CREATE DATABASE airflow OWNER mipflow;
