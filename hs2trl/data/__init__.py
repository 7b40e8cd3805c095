"""Reading, validating and converting data: HelpSteer2 rows, chat messages, preference pairs."""
