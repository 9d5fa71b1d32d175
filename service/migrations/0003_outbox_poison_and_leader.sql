-- Rows Kafka cannot take are set aside (parked) with the reason, and so are the later rows
-- of their group, which must not overtake them; an operator retries or releases them.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN parked_reason text;

-- The relay's walk skips parked rows, so they cost a poll nothing.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (group_id, id)
    WHERE parked_at IS NOT NULL AND published_at IS NULL;

-- The relay leader's term. A new leader whose predecessor did not hand over cleanly waits
-- until whatever that one had sent to Kafka is delivered or expired before it publishes.
CREATE TABLE relay_leader (
    id         integer     PRIMARY KEY CHECK (id = 1),
    epoch      bigint      NOT NULL,
    released   boolean     NOT NULL,
    changed_at timestamptz NOT NULL
);
INSERT INTO relay_leader VALUES (1, 0, true, now());
