module mptrain-example

go 1.19

require mptrain v0.0.0

replace mptrain => ../../bindings/go
