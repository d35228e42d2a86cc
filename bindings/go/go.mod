module commvq.org/libcommvq/bindings/go

go 1.19
