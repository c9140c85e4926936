module mptrain

go 1.19
