-- Customers in groups (contract v1.1). A group's customer_count is kept with it, in the
-- transaction that changes its members, so no read ever counts rows.
ALTER TABLE customer_groups
    ADD COLUMN customer_count integer NOT NULL DEFAULT 0 CHECK (customer_count >= 0);

CREATE TABLE group_members (
    organization_id text        NOT NULL,
    group_id        text        NOT NULL,
    customer_id     text        NOT NULL,
    added_at        timestamptz NOT NULL,
    PRIMARY KEY (organization_id, group_id, customer_id)
);

-- Which groups a customer is in.
CREATE INDEX group_members_customer ON group_members (organization_id, customer_id, group_id);

-- A deleted group's members leave every read in the delete's transaction (reads only see
-- members of live groups); their rows are removed afterwards, a batch at a time, so that a
-- group of a million members holds up no other command. Queued here by the delete.
CREATE TABLE member_purges (
    organization_id text        NOT NULL,
    group_id        text        NOT NULL,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, group_id)
);
