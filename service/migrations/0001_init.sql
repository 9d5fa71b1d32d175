CREATE TABLE customer_groups (
    id              text PRIMARY KEY,
    organization_id text        NOT NULL,
    name            text        NOT NULL,
    description     text,
    platform_id     text,
    version         integer     NOT NULL CHECK (version >= 1),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz
);

-- Names are unique per organization among live groups, case-insensitively; deleting frees the name.
CREATE UNIQUE INDEX customer_groups_live_name_key
    ON customer_groups (organization_id, lower(name)) WHERE deleted_at IS NULL;

-- Listing per tenant in a stable (updated_at, id) order, for pages and cursors.
CREATE INDEX customer_groups_org_updated ON customer_groups (organization_id, updated_at, id);

-- json, not jsonb: the relay publishes the payload byte for byte as it was written.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    event_type      text        NOT NULL,
    organization_id text        NOT NULL,
    group_id        text        NOT NULL,
    group_version   integer     NOT NULL,
    command_id      text        NOT NULL,
    traceparent     text,
    payload         json        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    published_at    timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_occurred_at ON outbox (occurred_at);

CREATE TABLE processed_commands (
    organization_id text        NOT NULL,
    command_id      text        NOT NULL,
    fingerprint     text        NOT NULL,
    result          json        NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, command_id)
);

CREATE INDEX processed_commands_processed_at ON processed_commands (processed_at);
