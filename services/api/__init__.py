"""The api process: REST on PORT, the tm.submit consumer, admission of tasks."""
