-- Every dead letter is deleted with the table.
DROP TABLE dead_letters;
