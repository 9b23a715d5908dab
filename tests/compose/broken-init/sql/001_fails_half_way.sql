-- Applied by initdb.sh on the first start (tests/compose/broken-init): the first statement
-- succeeds, the second fails, so initialisation stops half-way like a broken sql/ script would.
CREATE TABLE half_way (id int);
SELECT 1 / 0;
