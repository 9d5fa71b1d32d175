-- Names are unique per organization among live groups by a key the service computes
-- (service.domain.model.name_key), not by lower(): lower() follows the database's
-- collation and folds differently from the service's in-batch check, so whether two
-- names conflicted depended on whether they met in one batch or in two.
ALTER TABLE customer_groups ADD COLUMN name_key text;

-- Fills the key of every group. Live groups that the new key equates but lower() did
-- not (they were both accepted before) cannot all keep it, and none is renamed or
-- deleted here: the oldest (by created_at, then id) keeps the key; each other one gets
-- '<key> (DUPLICATE <id>)', which no name can produce (keys hold no ASCII capitals), and
-- is logged. Such a group stays readable, and can be renamed or deleted; a change that
-- keeps its name is refused as the name being taken, as creating it today would be.
-- python: fill_name_keys

ALTER TABLE customer_groups ALTER COLUMN name_key SET NOT NULL;

DROP INDEX customer_groups_live_name_key;
CREATE UNIQUE INDEX customer_groups_live_name_key
    ON customer_groups (organization_id, name_key) WHERE deleted_at IS NULL;
