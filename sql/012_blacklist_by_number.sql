-- Checking 500 numbers before a send is one index walk: the blacklist's unique key now starts
-- with the number, and the check asks for number = ANY(the numbers), which PostgreSQL 17+
-- answers in one pass over the sorted keys (a few dozen index searches for 500 numbers, not
-- 500 probes); older servers probe this index once per number. It replaces the key that
-- started with the source (usable by number only through PostgreSQL 18's skip scan, which the
-- planner preferred to the hash index) and the hash index, which serves no look-up now.
CREATE UNIQUE INDEX blacklist_by_number ON blacklist (number, source, (coalesce(channel, '')));
DROP INDEX blacklist_key;
DROP INDEX blacklist_number;
