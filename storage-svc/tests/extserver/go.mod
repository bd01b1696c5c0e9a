module modmesh.test/extserver

go 1.21
