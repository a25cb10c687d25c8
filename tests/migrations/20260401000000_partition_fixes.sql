-- Events of the partitioned test handler that a test has "fixed": an event with
-- `poisonUntilFixed` fails as poison until its (key, seq) is here (the replay tests).
CREATE TABLE partition_fixed (
    key  TEXT NOT NULL,
    seq  INT  NOT NULL,
    PRIMARY KEY (key, seq)
);
