-- The capture library (capture format 3, see tashkent_capture.c).
CREATE OR REPLACE FUNCTION tashkent.capture_row() RETURNS trigger
LANGUAGE c AS '@LIBRARY@', 'tashkent_capture_row';
CREATE OR REPLACE FUNCTION tashkent.capture_truncate() RETURNS trigger
LANGUAGE c AS '@LIBRARY@', 'tashkent_capture_truncate';
CREATE OR REPLACE FUNCTION tashkent.ws_append_ddl(entry text) RETURNS void
LANGUAGE c STRICT AS '@LIBRARY@', 'tashkent_ws_append_ddl';
CREATE OR REPLACE FUNCTION tashkent.ws_read() RETURNS SETOF bytea
LANGUAGE c AS '@LIBRARY@', 'tashkent_ws_read';
CREATE OR REPLACE FUNCTION tashkent.ws_size() RETURNS bigint
LANGUAGE c AS '@LIBRARY@', 'tashkent_ws_size';
CREATE OR REPLACE FUNCTION tashkent.capture_version() RETURNS int
LANGUAGE c IMMUTABLE AS '@LIBRARY@', 'tashkent_capture_version';
-- True while an extension's script runs (CREATE EXTENSION, ALTER EXTENSION
-- ... UPDATE): its commands belong to the client's statement.
CREATE OR REPLACE FUNCTION tashkent.in_extension_script() RETURNS boolean
LANGUAGE c VOLATILE AS '@LIBRARY@', 'tashkent_in_extension_script';

-- Capture format 1 (before the library): PL/pgSQL generated per table, and
-- its helpers. Removed wherever an older install left them.
DROP FUNCTION IF EXISTS tashkent.apply(text);
DROP FUNCTION IF EXISTS tashkent.append(text);
DROP FUNCTION IF EXISTS tashkent.key_sql(text, text[], text, text);
DROP FUNCTION IF EXISTS tashkent.index_columns(oid);
DROP FUNCTION IF EXISTS tashkent.refuse_mixed_query();
DROP FUNCTION IF EXISTS tashkent.chunk_keys_sql(text, text[]);
DROP FUNCTION IF EXISTS tashkent.settings_free_type(oid);
