module commvq

go 1.19
