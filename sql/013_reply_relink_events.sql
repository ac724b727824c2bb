-- A reply is announced again when the message it answers changes: a reply that arrived before
-- its send was registered is announced with reply_to null, and once the send is registered (and
-- the reply linked to it, an UPDATE of reply_links) with reply_to set. Only rows whose link did
-- change are updated (correlation/store.py), so a registration that changes nothing announces
-- nothing. Consumers keep the latest event per reply (its sms_msg_id).
CREATE TRIGGER events_on_relinked_replies AFTER UPDATE ON reply_links
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_replies();
