package api_test

func runLoadGenerator() bool { return false }
