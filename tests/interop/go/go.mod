module kubepki.example/interop

go 1.19
